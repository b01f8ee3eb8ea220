import { Controller, Get, Module } from '@nestjs/common';
import { LeadercronJobs, LeadercronModule } from '@leadercron/nestjs';
import { ReportsService } from './reports.service.js';

@Controller()
export class HealthController {
  constructor(private readonly jobs: LeadercronJobs) {}

  @Get('healthz')
  health(): { status: string; draining: boolean; running: number } {
    return { status: 'ok', draining: this.jobs.isDraining, running: this.jobs.running };
  }
}

@Module({
  // The trigger listener on LEADERCRON_APP_LISTEN (default 127.0.0.1:8081),
  // secrets from LEADERCRON_TRIGGER_SECRET(_FILE) and
  // LEADERCRON_TRIGGER_SECRET_PREVIOUS(_FILE): the defaults, spelled out.
  imports: [LeadercronModule.forRoot({ shutdownTimeoutMs: 30_000 })],
  controllers: [HealthController],
  providers: [ReportsService],
})
export class AppModule {}
