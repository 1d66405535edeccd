"""`dashtam-env`: start, stop and inspect the dev and test environments by hand.

It drives the same backends, safety checks and schema code as the pytest plugin, so a stack
brought up here (`up test`) is the one a later `pytest` run attaches to. One job per module:

* `parser`: the command line and `main` (the `dashtam-env` console script), errors turned into exit codes;
* `commands`: up, down, status, logs, reset, kept;
* `envs`: the dev and test environments' files and the plugin's configuration of them;
* `running`: which backend runs an environment;
* `apps`: the application on a stack: its URLs, the dev role and database, the API and callback servers.
"""

from __future__ import annotations

from pytest_dashtam.cli.parser import main

__all__ = ["main"]
