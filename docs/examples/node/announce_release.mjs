// Announce a release to hotupdate from Node.js with amqplib: no hotupdate package needed.
//
// Usage: npm ci && AMQP_URL=amqp://team.ci:secret@broker:5672/ node announce_release.mjs
// (the team's broker user must be granted release.announced for the project: docs/publishing.md)
import { randomUUID } from 'node:crypto';
import amqplib from 'amqplib';

const url = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/';
const project = process.env.PROJECT ?? 'ssss';
const area = process.env.AREA ?? 'cn'; // the area code
const version = process.env.VERSION ?? '004200000';
const updateId = randomUUID(); // the update its pull starts takes this id
const event = {
  specversion: '1.0',
  id: randomUUID(),
  source: 'ci/ssss-build',
  type: 'hotupdate.release.announced.v1',
  time: new Date().toISOString(),
  datacontenttype: 'application/json',
  dataschema: 'urn:hotupdate:schema:hotupdate.release.announced.v1',
  updateid: updateId,
  project,
  area,
  sequence: 0,
  correlationid: updateId,
  data: {
    update_type: 'hot_server',
    version,
    files: [{ file_name: 'ebin/role_server.beam', file_md5: 'abe347d3fdff45f1078102c4637852a5' }],
    announced_by: 'ssss-build',
    link: 'https://ci.example.com/ssss/builds/4200',
  },
};
const routingKey = `${project}.${area}.release.announced.v1`;

const connection = await amqplib.connect(url);
try {
  const channel = await connection.createConfirmChannel(); // publish is confirmed by the broker
  channel.publish('hotupdate.events', routingKey, Buffer.from(JSON.stringify(event), 'utf-8'), {
    persistent: true,
    messageId: event.id,
    contentType: 'application/cloudevents+json',
    // your login: the broker refuses any other, and consumers park an event without one
    userId: decodeURIComponent(new URL(url).username),
    mandatory: true,
  });
  await channel.waitForConfirms();
  console.log('published', event.id, routingKey);
} finally {
  await connection.close();
}
