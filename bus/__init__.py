"""The only package that knows AMQP: envelope, catalogue, topology, publishing, consuming."""
