"""Creates an IAM user with full S3 access on a moto server (still open) and prints its access key as JSON.

After this, the test switches moto's IAM enforcement on (POST /moto-api/reset-auth 0): from then on
only this key, correctly signed, is accepted, as on a real S3 server.
Usage: moto_credentials.py <endpoint>
"""
import json
import sys

import boto3

iam = boto3.client(
    "iam",
    endpoint_url=sys.argv[1],
    region_name="us-east-1",
    # moto accepts any key before enforcement is on; these only make boto3 sign the requests.
    aws_access_key_id="bootstrap",
    aws_secret_access_key="bootstrap",
)
iam.create_user(UserName="heimdall")
iam.put_user_policy(
    UserName="heimdall",
    PolicyName="s3-all",
    PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}),
)
key = iam.create_access_key(UserName="heimdall")["AccessKey"]
print(json.dumps({"accessKey": key["AccessKeyId"], "secretKey": key["SecretAccessKey"]}))
