#!/bin/sh
# The image's entrypoint: a script, so only the image label tells the webhook this is gunicorn.
exec gunicorn --bind 0.0.0.0:8000 app:app
