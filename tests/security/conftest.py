"""The security suite uses the real-engine fixtures of tests/integration (llama-server, vLLM, ports, cleanup)."""

from integration.conftest import *  # noqa: F401,F403
