"""Exit codes of every command (SPEC "Command line"), defined once for all of them."""

from __future__ import annotations

EXIT_OK = 0  # done; warnings may have been printed
EXIT_INPUT = 2  # bad input: a message names the file (or flag) and the object, never a traceback
EXIT_ENVIRONMENT = 3  # the environment: a missing tool, an unreachable cluster, a port in use
