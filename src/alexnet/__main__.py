"""`python -m alexnet`: the same command line as `alexnet`."""

from .cli import main

raise SystemExit(main())
