"""Allows `python -m gputuned`."""

from gputuned.cli import main

raise SystemExit(main())
