"""`python -m webhook`: the same as the `concurrency-injector` command."""

import sys

from webhook.cli import main

sys.exit(main())
