"""`python -m dswb ...`: the same CLI as the `dswb` console script (used to launch detached runs)."""

from dswb.cli.entry import main

if __name__ == "__main__":
    main()
