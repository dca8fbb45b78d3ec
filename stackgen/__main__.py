"""`python -m stackgen` runs the command line."""

from stackgen.cli import main

if __name__ == "__main__":
    main()
