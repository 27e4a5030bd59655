# CUDA PyTorch base; the package and its stack install on top.
# Build: docker build -t lightning-sarclip .
# Run:   docker run --gpus all --ipc=host -v /data:/data lightning-sarclip fit --config experiments/quickstart.yaml
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/lightning_sarclip
COPY pyproject.toml README.md ./
COPY lightning_sarclip ./lightning_sarclip
COPY experiments ./experiments
# The base image's torch/torchvision satisfy the pins; pip keeps them.
RUN pip install --no-cache-dir .

ENTRYPOINT ["python", "-m", "lightning_sarclip"]
CMD ["--help"]
