import { Controller, HttpCode, Param, Post, Req, Res } from '@nestjs/common';
import { LeadercronJobs } from './leadercron.jobs.js';

// The few members of Express's request and response used here, so that the
// module needs no @types/express.
interface HttpRequest {
  headers: Record<string, string | string[] | undefined>;
  body?: unknown;
}
interface HttpResponse {
  readonly headersSent: boolean;
  readonly writableFinished: boolean;
  status(code: number): this;
  json(body: unknown): this;
  on(event: 'close', listener: () => void): this;
}

/** POST /jobs/:name and POST /drain, as the leadercron sidecar calls them. */
@Controller()
export class LeadercronController {
  constructor(private readonly jobs: LeadercronJobs) {}

  @Post('jobs/:name')
  async trigger(@Param('name') name: string, @Req() req: HttpRequest, @Res() res: HttpResponse): Promise<void> {
    const hangup = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) {
        hangup.abort(new Error('the sidecar hung up'));
      }
    });
    const answer = await this.jobs.handleTrigger(name, req.headers, req.body, hangup.signal);
    if (!res.headersSent) {
      res.status(answer.status).json(answer.body);
    }
  }

  @Post('drain')
  @HttpCode(200)
  drain(): { running: number } {
    return { running: this.jobs.drain() };
  }
}
