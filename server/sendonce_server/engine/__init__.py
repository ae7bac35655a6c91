"""The delivery engine: keys, records, retry policy and the deliver/attempt/clear decisions.

Imports neither grpc nor a storage or HTTP library, so it can be driven from a plain asyncio test.
"""
