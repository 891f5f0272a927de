"""`python -m vlcli` (and `torchrun -m vlcli ...`)."""

from vlcli.cli.main import run

if __name__ == "__main__":
    run()
