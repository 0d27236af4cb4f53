"""``python -m gateproxy`` is the ``gateproxy`` command."""

from gateproxy.cli import main

raise SystemExit(main())
