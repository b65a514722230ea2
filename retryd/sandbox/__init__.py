"""The sandbox: retryd on the embedded moto server with a demo world, no AWS account."""
