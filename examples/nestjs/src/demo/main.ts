// The NestJS demo app: jobs hello, send-report (about 2 s) and reindex
// (5 s, in the background), triggered by a leadercron sidecar.
// It listens on $HOST:$PORT (default 127.0.0.1:8080). On SIGTERM it drains
// (new triggers get 503), waits for runs in flight, then exits.
import 'reflect-metadata';
import { ConsoleLogger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module.js';

// One JSON object per log line; the module logs constant messages with fields.
const app = await NestFactory.create(AppModule, { logger: new ConsoleLogger({ json: true }) });
app.enableShutdownHooks();
const host = process.env.HOST ?? '127.0.0.1';
const port = Number(process.env.PORT ?? 8080);
await app.listen(port, host);
console.log(JSON.stringify({ msg: 'nestjs demo app listening', url: await app.getUrl() }));
