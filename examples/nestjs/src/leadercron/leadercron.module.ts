import { type DynamicModule, Module } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { LeadercronController } from './leadercron.controller.js';
import { LeadercronExplorer } from './leadercron.explorer.js';
import { LeadercronJobs } from './leadercron.jobs.js';
import { LEADERCRON_OPTIONS, type LeadercronModuleOptions } from './options.js';

/**
 * Serves the leadercron app contract in a Nest application. Import it once,
 * in the root module:
 *
 *   imports: [LeadercronModule.forRoot({ async: false })]
 *
 * and mark job methods with @LeadercronJob('name'). LeadercronJobs is
 * exported for programmatic registration and for health endpoints.
 */
@Module({})
export class LeadercronModule {
  static forRoot(options: LeadercronModuleOptions = {}): DynamicModule {
    return {
      module: LeadercronModule,
      global: true,
      imports: [DiscoveryModule],
      controllers: [LeadercronController],
      providers: [{ provide: LEADERCRON_OPTIONS, useValue: options }, LeadercronJobs, LeadercronExplorer],
      exports: [LeadercronJobs],
    };
  }
}
