"""`python -m retryd`: the same as the `retryd` console script."""

from retryd.cli import main

raise SystemExit(main())
