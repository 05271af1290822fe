"""Applications of a trained VAE: generate, reconstruct, interpolate, edit, detect, embed, denoise,
impute, augment, report. Each is a plain Python function; the CLI verbs in ``vaekit.commands``
call these and nothing lower."""
