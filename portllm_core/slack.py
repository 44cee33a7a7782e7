"""The Slack Web API client every process uses (the Slack app and the workers' notifier)."""
from __future__ import annotations

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from portllm_core.settings import Settings, require


def make_client(settings: Settings) -> WebClient:
    """SLACK_API_URL when set (a proxy, or the fake in tests); retries when Slack says 429."""
    return WebClient(
        token=require(settings.slack_bot_token, "SLACK_BOT_TOKEN", "the bot token (xoxb-…) from the Slack app"),
        base_url=settings.slack_api_url or WebClient.BASE_URL,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=3)],
    )
