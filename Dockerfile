FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make chromium chromium-driver \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/saegeo
COPY . .
RUN make setup
EXPOSE 8050
CMD [".venv/bin/saegeo", "demo", "--host", "0.0.0.0", "--port", "8050"]
