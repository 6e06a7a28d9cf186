"""`python -m alignkit` runs the command line."""

from alignkit.cli import main

if __name__ == "__main__":
    main()
