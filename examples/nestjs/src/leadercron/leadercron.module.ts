import { type DynamicModule, Module } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { resolveTriggerKeys } from './auth.js';
import { LeadercronExplorer } from './leadercron.explorer.js';
import { LeadercronJobs } from './leadercron.jobs.js';
import { LEADERCRON_KEYS, LEADERCRON_OPTIONS, type LeadercronModuleOptions } from './options.js';
import { LeadercronListener } from './server.js';

/**
 * Serves the leadercron app contract for a Nest application, on a listener
 * of its own (default 127.0.0.1:8081, LEADERCRON_APP_LISTEN), not on the
 * app's port. Import it once, in the root module:
 *
 *   imports: [LeadercronModule.forRoot({ async: false })]
 *
 * and mark job methods with @LeadercronJob('name'). LeadercronJobs is
 * exported for programmatic registration and for health endpoints,
 * LeadercronListener for the listener's address.
 *
 * Creating the application fails (an Error naming the option or variable)
 * when a secret is shorter than 32 bytes, both forms of one secret are set,
 * or the listen address is not host:port, or not a loopback address while
 * no secret is configured.
 */
@Module({})
export class LeadercronModule {
  static forRoot(options: LeadercronModuleOptions = {}): DynamicModule {
    return {
      module: LeadercronModule,
      global: true,
      imports: [DiscoveryModule],
      providers: [
        { provide: LEADERCRON_OPTIONS, useValue: options },
        {
          provide: LEADERCRON_KEYS,
          useFactory: (o: LeadercronModuleOptions) => resolveTriggerKeys(o.secrets),
          inject: [LEADERCRON_OPTIONS],
        },
        LeadercronJobs,
        LeadercronExplorer,
        LeadercronListener,
      ],
      exports: [LeadercronJobs, LeadercronListener],
    };
  }
}
