# hermes-api with the PostgreSQL store's driver (the postgres extra); docker-compose.yml builds it.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hermes_api ./hermes_api
RUN pip install --no-cache-dir '.[postgres]'
USER nobody
EXPOSE 8642
ENTRYPOINT ["hermes-api"]
CMD ["serve", "--host", "0.0.0.0"]
