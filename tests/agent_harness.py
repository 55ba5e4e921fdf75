"""``python -m tests.agent_harness --config ...``: the real agent entry point (``agents.daemon``)
with the test probes of ``tests.agent_peers`` registered next to the shipped ones."""

import sys

from agents.config import PROBE_KINDS
from agents.daemon import main
from tests.agent_peers import TEST_KINDS

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], {**PROBE_KINDS, **TEST_KINDS}))
