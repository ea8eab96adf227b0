# The image every Kubeflow step runs (python -m pipeline.kubeflow --image ...): the pipeline's code and its
# exact tested dependencies. Build and push it where the cluster can pull it:
#
#   docker build -t REGISTRY/colorization:0.1.0 . && docker push REGISTRY/colorization:0.1.0
#   docker run --rm REGISTRY/colorization:0.1.0 python -m pipeline.run --output_dir /tmp/out   # the quick run
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app

# Dependencies first, from setup.py and constraints.txt alone, so a code change does not reinstall them.
COPY setup.py constraints.txt ./
RUN mkdir -p components schemas pipeline serving \
    && touch components/__init__.py schemas/__init__.py pipeline/__init__.py serving/__init__.py \
    && pip install -c constraints.txt ".[gcp]" \
    && pip uninstall -y colorization-pipeline \
    && rm -rf components schemas pipeline serving build *.egg-info

COPY components/ components/
COPY schemas/ schemas/
COPY pipeline/ pipeline/
COPY serving/ serving/
RUN pip install --no-deps -c constraints.txt . && rm -rf build *.egg-info

# Keras looks for ImageNet weights (Model 2's backbone) here; it fetches them when the cluster has network, else mount or copy them in.
ENV KERAS_HOME=/root/.keras
CMD ["python", "-m", "pipeline.run", "--help"]
