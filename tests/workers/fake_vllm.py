"""A stand-in for `python -m vllm.entrypoints.openai.api_server`, for the supervisor's own tests
(the engine's answers are tested against the real one in test_vllm.py).

Run as PORTLLM_VLLM_PYTHON (tests write a launcher script around it): it takes the same flags,
answers /health, loads any adapter whose folder has no `refuse` file, and streams a completion
naming the adapter: `answer from <adapter>`, word by word. It exits after the first word when the
adapter's folder has a `die` file (once) or an `always-die` file (every time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

adapters: dict[str, str] = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        print(self.command, self.path, flush=True)

    def _json(self, status: int, body) -> None:
        data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json(200, "") if self.path == "/health" else self._json(404, {"error": {"message": "no route"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/load_lora_adapter":
            if (Path(body["lora_path"]) / "refuse").exists():
                return self._json(500, {"error": {"message": "LoRA rank 128 is greater than max_lora_rank 64."}})
            if body["lora_name"] in adapters:
                return self._json(400, {"error": {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."}})
            adapters[body["lora_name"]] = body["lora_path"]
            return self._json(200, "Success")
        if self.path == "/v1/completions":
            if body["model"] not in adapters:
                return self._json(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            patch = Path(adapters[body["model"]])
            for word in [" answer", " from", f" {body['model']}"]:
                self.wfile.write(f"data: {json.dumps({'choices': [{'text': word}]})}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.01)
                if (patch / "die").exists() and not (patch / "died").exists():  # the engine crashes mid-answer
                    (patch / "died").write_text("")
                    os._exit(1)
                if (patch / "always-die").exists():
                    os._exit(1)
            self.wfile.write(b"data: [DONE]\n\n")
            return
        self._json(404, {"error": {"message": "no route"}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    parser.add_argument("--startup-s", type=float, default=0.5)
    args, _ = parser.parse_known_args()
    print("fake vLLM starting:", " ".join(sys.argv[1:]), flush=True)
    time.sleep(args.startup_s)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
