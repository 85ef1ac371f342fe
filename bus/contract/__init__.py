"""The message contract: the event catalogue, the envelope, versions and upcasting, and the documents made
from them (JSON Schemas, examples). No transport: nothing here knows AMQP, so a
team's tool can validate its events with this subpackage alone; the rest of :mod:`bus` carries them."""
