"""diffhmc: one conditional diffusion model that emulates 2D dark-matter maps and
infers (Omega_m, sigma_8) from a map by Hamiltonian Monte Carlo on its variational bound.

Layers (imports flow downwards only)::

    errors, prior, fileio            validation, parameter space, atomic I/O
    cosmology -> pm -> simulator     particle-mesh N-body maps (physical units)
    gaussian                         Gaussian fields with an exact likelihood
    stats                            summary statistics (power spectrum, PDF, peaks, MFs)
    dataset -> generate, camels      one on-disk dataset format, generation, CAMELS reader
    schedule -> unet -> sampling     the conditional DDPM (noise schedule, U-Net, samplers)
    augment, train, checkpoint       training (Lightning Fabric), self-describing checkpoints
    validate                         emulator validation metrics
    likelihood -> potential          variational-bound log L(theta) (common random numbers),
                                     box transform + potential U(z) for HMC
    plots_stats, report, cli         figures, workflows and the command line (I/O edge)
"""

__version__ = "0.1.0"
