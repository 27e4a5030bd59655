"""lightning_sarclip: a PyTorch Lightning framework for SAR vision-language (CLIP) models.

The library parts import without the trainer: ``lightning_sarclip.models`` (``create_model``),
``lightning_sarclip.losses`` (``InfoNCELoss``) and ``lightning_sarclip.eval`` (metrics, zero-shot).
The Lightning parts are ``lightning_sarclip.training.module.SARCLIPModule``, ``lightning_sarclip.data`` and
``lightning_sarclip.commands.fit``.
"""

__version__ = "0.1.0"
