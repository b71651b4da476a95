"""`python -m pegp_stream`, as torchrun launches a module: `torchrun --nproc-per-node N -m pegp_stream run ...`."""

from pegp_stream.cli import main

main()
