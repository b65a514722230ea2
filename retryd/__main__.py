"""`python -m retryd`: the same as the `retryd` console script."""

from retryd.commands.cli import main

raise SystemExit(main())
