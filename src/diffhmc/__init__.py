"""diffhmc: one conditional diffusion model that emulates 2D dark-matter maps and
infers (Omega_m, sigma_8) from a map by Hamiltonian Monte Carlo on its variational bound.

Layer map: a subpackage imports only from layers above it in this list, never from its own
layer's neighbours or from below (``tests/test_architecture.py`` enforces it)::

    core/          errors and validation, parameter space and prior-box transforms,
                   atomic file I/O and hashing, machine description
    simulation/    cosmology, particle-mesh N-body, CAMELS-like maps, Latin-hypercube
                   design, Gaussian fields with an exact likelihood
    stats/         summary statistics of maps (power spectrum, PDF, peaks, Minkowski)
    evaluation/    posterior metrics: coverage + Wilson intervals, z, SBC ranks, TARP
    batch/         many per-map jobs on Dask (local, scheduler, SLURM), resumable folders
    data/          one dataset format, normalisation, generation, CAMELS reader, noise,
                   augmentation
    emulator/      the conditional DDPM: schedule, U-Net, samplers, training,
                   checkpoints, validation metrics, the Gaussian oracle eps-model
    baselines/     CNN moment network and power-spectrum NPE behind one front
    inference/     Diffusion-HMC: bound likelihoods, potential, NUTS, surrogate, grid,
                   diagnostics, one map's posterior, recalibration
    plots/         figures (statistics, posteriors, robustness)
    workflows/     multi-step runs with files: simulate/emulate/validate, posteriors to
                   folders, batch inference, the demo, the robustness study
    cli/           the ``diffhmc`` command: parse arguments, call one workflow

On one line: ``core < simulation, stats, evaluation, batch < data < emulator, baselines
< inference < plots < workflows < cli``.
"""

__version__ = "0.1.0"
