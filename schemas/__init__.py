"""sendonce's Avro schemas (the ``.avsc`` files in this package) and their codec.

Each name is imported from the module that owns it; the package re-exports nothing:

* ``codec``: ``SchemaCodec`` and ``default_codec()``, the record framings (``MAGIC``,
  ``CONFLUENT_MAGIC``) and ``SCHEMA_DIR``;
* ``errors``: ``CodecError`` and the one subclass per way a record or schema can fail;
* ``fingerprint``: Parsing Canonical Form and its CRC-64-AVRO fingerprint;
* ``validation``: checking a record against its schema, with readable errors;
* ``fast_path``: the fastavro fast path of ``encode`` / ``decode``;
* ``registry``: the Confluent Schema Registry client and ``codec_for_settings``.
"""
