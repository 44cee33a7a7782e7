from __future__ import annotations

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from tests.fixtures.fake_slack import BOT_USER_ID


def test_records_calls_and_answers_like_slack(fake_slack):
    client = WebClient(token="xoxb-x", base_url=fake_slack.url)
    assert client.auth_test()["user_id"] == BOT_USER_ID
    posted = client.chat_postMessage(channel="C1", text="hi", blocks=[{"type": "divider"}])
    client.chat_update(channel="C1", ts=posted["ts"], text="edited")
    client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    client.views_publish(user_id="U1", view={"type": "home", "blocks": []})
    stream = client.chat_stream(channel="C1", thread_ts=posted["ts"])
    stream.append(markdown_text="hello ")
    stream.append(markdown_text="world")
    stream.stop()
    methods = [c.method for c in fake_slack.calls]
    assert methods[:5] == ["auth.test", "chat.postMessage", "chat.update", "chat.postEphemeral", "views.publish"]
    assert "chat.startStream" in methods and methods[-1] == "chat.stopStream"
    assert fake_slack.calls[1].body["blocks"] == [{"type": "divider"}]
    assert fake_slack.calls[2].body["ts"] == posted["ts"]
    streamed = "".join(c.body.get("markdown_text", "") + "".join(ch.get("text", "") for ch in c.body.get("chunks", []))
                       for c in fake_slack.calls if c.method.endswith("Stream"))
    assert streamed == "hello world"


def test_rate_limits_and_failures_on_request(fake_slack):
    client = WebClient(token="xoxb-x", base_url=fake_slack.url,
                       retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    fake_slack.rate_limit("chat.update", retry_after=0)
    assert client.chat_update(channel="C1", ts="1.0", text="x")["ok"]
    assert len(fake_slack.calls_to("chat.update")) == 2
    fake_slack.fail("chat.startStream", "not_allowed")
    try:
        client.chat_startStream(channel="C1", thread_ts="1.0")
    except SlackApiError as exc:
        assert exc.response["error"] == "not_allowed"
    else:
        raise AssertionError("expected a Slack error")
