"""cleftgan-hpc: the CleftGAN recipe (StyleGAN3-t transfer learning with ADA) as batch jobs for HPC clusters."""

__version__ = "0.1.0"
