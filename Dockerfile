# One image for every Trackyard service; the command picks the part (signal, router, sfu, dev).
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
COPY src src
RUN uv sync --frozen --no-dev && useradd --system --uid 1000 trackyard
USER trackyard
ENV PATH=/app/.venv/bin:$PATH
EXPOSE 7880 7881 7890 6789 50000-60000/udp
ENTRYPOINT ["trackyard"]
CMD ["dev", "--bind", "0.0.0.0"]
