"""`python -m kjob`: the same as the `kjob` command."""

from kjob.cli import main

main()
