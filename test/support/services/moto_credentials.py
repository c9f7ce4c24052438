"""Creates two IAM users on a moto server (still open) and prints their access keys as JSON:
"heimdall", with full S3 access, and "heimdall-reader", whose policy allows reading only, so that its
uploads are denied (AccessDenied) as a bucket or IAM policy denies them on a real server.

After this, the test switches moto's IAM enforcement on (POST /moto-api/reset-auth 0): from then on
only these keys, correctly signed, are accepted, as on a real S3 server.
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


def user(name, actions):
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName="s3",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"accessKey": key["AccessKeyId"], "secretKey": key["SecretAccessKey"]}


full = user("heimdall", "s3:*")
# moto authorizes HEAD bucket as s3:HeadBucket; everything that writes is left out.
reader = user("heimdall-reader", ["s3:Get*", "s3:List*", "s3:HeadBucket"])
print(json.dumps({**full, "readOnly": reader}))
