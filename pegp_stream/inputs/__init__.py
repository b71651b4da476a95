"""The record contract shared by the Kafka path and the HTTP path: a record or an uploaded image to a
`Sample` (decode.py, pure, one stable reason code per failure) and a sample to a record (encode.py)."""
