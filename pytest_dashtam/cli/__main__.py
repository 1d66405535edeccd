"""`python -m pytest_dashtam.cli`: the same as the `dashtam-env` console script."""

from __future__ import annotations

import sys

from pytest_dashtam.cli.parser import main

sys.exit(main())
