FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 GEOSEARCH_OFFLINE=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY geosearch geosearch
COPY tools tools
COPY server server
COPY prompts prompts
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3,<=2.14.1" "torchvision>=0.18" \
    && pip install .
# Indexes and layers live under /data; the MCP server only opens files under its roots.
# Off loopback a bearer token is required: docker run -e GEOSEARCH_BEARER_TOKEN=... -p 8765:8765 -v $PWD/data:/data geosearch
# Clients reach a container by its IP or a host name, so any Host header is accepted (the token still
# is required); narrow it with -e GEOSEARCH_ALLOWED_HOSTS=geo.example.org,10.0.0.5:8765
ENV GEOSEARCH_ALLOWED_HOSTS="*"
VOLUME /data
EXPOSE 8765
ENTRYPOINT ["geosearch"]
CMD ["serve", "--root", "/data", "--http", "--host", "0.0.0.0", "--port", "8765"]
