"""The console tests reuse the registered world of the Slack tests."""
from tests.bot.conftest import world  # noqa: F401  (a fixture)
