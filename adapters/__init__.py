"""The adapters beside pipeline/store.py's ports that need the cloud (S3, SQS: boto3), and the one bootstrap.

They live outside pipeline/, whose core never imports boto3, and outside functions/, because every
entry point (the Lambda handlers, the CLI, the console, the agent) builds its adapters here.
"""
