"""Subcommands of the ``famous`` command line, one module per area, and their shared options."""


def add_voxel_size(parser, help: str = "voxel size in nm (z, y, x); overrides the file's metadata"):
    """``--voxel-size Z Y X`` (nm), for commands that open a stack."""
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), help=help)


def add_channel(parser) -> None:
    """``--channel C``: the channel of a multi-channel TIFF to use."""
    parser.add_argument(
        "--channel",
        type=int,
        metavar="C",
        help="the channel of a multi-channel TIFF (hyperstack) to use, from 0",
    )
