#!/usr/bin/env bash
# Create spoolsweep's bucket, per-step event queues with dead-letter queues, S3 -> SQS notifications per
# prefix, per-host FIFO instruction queues and the signing-key secret: the resources of infra/template.yaml.
# Not the triage state machine: its steps are functions that LocalStack would run in Docker; with no
# SPOOLSWEEP_STATE_MACHINE_ARN, `spoolsweep up --store s3://...` runs the same workflow itself.
set -euo pipefail
prefix=${SPOOLSWEEP_PREFIX:-spoolsweep}
hosts=${SPOOLSWEEP_HOSTS:-mx1}
account=000000000000
region=${AWS_DEFAULT_REGION:-us-east-1}
bucket="${prefix}-evidence-${account}-${region}"
steps="parse:incoming triage:parsed blocklist:manifests dispatch:approvals"

queue_arn() { awslocal sqs get-queue-attributes --queue-url "$1" --attribute-names QueueArn --query Attributes.QueueArn --output text; }

awslocal s3api create-bucket --bucket "$bucket" >/dev/null
awslocal s3api put-bucket-versioning --bucket "$bucket" --versioning-configuration Status=Enabled
awslocal s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true

configs=""
for pair in $steps; do
  step=${pair%%:*}; input=${pair#*:}
  dlq_url=$(awslocal sqs create-queue --queue-name "${prefix}-${step}-dlq" --query QueueUrl --output text)
  dlq_arn=$(queue_arn "$dlq_url")
  url=$(awslocal sqs create-queue --queue-name "${prefix}-${step}-events" --attributes \
    "{\"VisibilityTimeout\":\"900\",\"RedrivePolicy\":\"{\\\"deadLetterTargetArn\\\":\\\"${dlq_arn}\\\",\\\"maxReceiveCount\\\":\\\"3\\\"}\"}" \
    --query QueueUrl --output text)
  arn=$(queue_arn "$url")
  # a manifest's summary is written after its message parts: only it says the manifest is complete
  suffix=""; [ "$input" = manifests ] && suffix=",{\"Name\":\"suffix\",\"Value\":\"manifest.json\"}"
  configs="${configs}${configs:+,}{\"Id\":\"${step}-on-${input}\",\"QueueArn\":\"${arn}\",\"Events\":[\"s3:ObjectCreated:*\"],\"Filter\":{\"Key\":{\"FilterRules\":[{\"Name\":\"prefix\",\"Value\":\"${input}/\"}${suffix}]}}}"
done
awslocal s3api put-bucket-notification-configuration --bucket "$bucket" \
  --notification-configuration "{\"QueueConfigurations\":[${configs}]}"

for host in $hosts; do
  dlq_url=$(awslocal sqs create-queue --queue-name "${prefix}-instructions-${host}-dlq.fifo" \
    --attributes FifoQueue=true --query QueueUrl --output text)
  dlq_arn=$(queue_arn "$dlq_url")
  awslocal sqs create-queue --queue-name "${prefix}-instructions-${host}.fifo" --attributes \
    "{\"FifoQueue\":\"true\",\"VisibilityTimeout\":\"300\",\"RedrivePolicy\":\"{\\\"deadLetterTargetArn\\\":\\\"${dlq_arn}\\\",\\\"maxReceiveCount\\\":\\\"5\\\"}\"}" >/dev/null
done

awslocal secretsmanager create-secret --name "${prefix}/signing-key" \
  --description "Ed25519 private key (PEM) the dispatch function signs with" >/dev/null || true
echo "spoolsweep: s3://${bucket} and queues for: ${hosts}"
