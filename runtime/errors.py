"""Errors a user can act on. The CLI prints them as one line and exits with ``exit_code``."""


class MaiacError(Exception):
    """Bad input or an impossible request: names the node, op type, file or option."""

    exit_code = 2


class ProgramError(MaiacError):
    """A `.maia` file that is corrupt, truncated, tampered with or inconsistent."""


class MachineError(MaiacError):
    """The machine model stopped: a hazard, an out-of-bounds access, a bad operand.

    Names the instruction (its index and source op) that faulted.
    """
