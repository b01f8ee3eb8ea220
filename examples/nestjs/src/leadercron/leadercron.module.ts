import {
  type ConfigurableModuleAsyncOptions,
  ConfigurableModuleBuilder,
  type ConfigurableModuleOptionsFactory,
  type DynamicModule,
  Module,
  type Provider,
} from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { resolveTriggerKeys } from './auth.js';
import { LeadercronExplorer } from './leadercron.explorer.js';
import { LeadercronJobs } from './leadercron.jobs.js';
import { checkModuleOptions, LEADERCRON_KEYS, LEADERCRON_OPTIONS, type LeadercronModuleOptions } from './options.js';
import { LeadercronListener } from './server.js';

/** What forRootAsync takes: useFactory + inject (+ imports), useClass or useExisting. */
export type LeadercronModuleAsyncOptions = ConfigurableModuleAsyncOptions<LeadercronModuleOptions, 'createLeadercronOptions'>;

/** A class for forRootAsync({ useClass }) / ({ useExisting }): createLeadercronOptions() returns the options. */
export type LeadercronOptionsFactory = ConfigurableModuleOptionsFactory<LeadercronModuleOptions, 'createLeadercronOptions'>;

const { ConfigurableModuleClass } = new ConfigurableModuleBuilder<LeadercronModuleOptions>({
  moduleName: 'Leadercron',
  optionsInjectionToken: LEADERCRON_OPTIONS,
})
  .setClassMethodName('forRoot')
  .setFactoryMethodName('createLeadercronOptions')
  .build();

const keysProvider: Provider = {
  provide: LEADERCRON_KEYS,
  useFactory: (o: unknown) => resolveTriggerKeys(checkModuleOptions(o).secrets),
  inject: [LEADERCRON_OPTIONS],
};

/**
 * Serves the leadercron app contract for a Nest application, on a listener
 * of its own (default 127.0.0.1:8081, LEADERCRON_APP_LISTEN), not on the
 * app's port. Import it once, in the root module:
 *
 *   imports: [LeadercronModule.forRoot({ async: false })]
 *
 * or, with options from other providers (ConfigService, ...):
 *
 *   imports: [LeadercronModule.forRootAsync({
 *     imports: [ConfigModule],
 *     inject: [ConfigService],
 *     useFactory: (config: ConfigService) => ({ prefix: config.get('LEADERCRON_PREFIX') }),
 *   })]
 *
 * and mark job methods with @LeadercronJob('name'). The module is global:
 * LeadercronJobs (programmatic registration, health endpoints) and
 * LeadercronListener (the listener's address) can be injected anywhere.
 *
 * Creating the application fails (an Error naming the option or variable)
 * when a secret is shorter than 32 bytes, both forms of one secret are set,
 * the prefix is not a path, or the listen address is not host:port, or not
 * a loopback address while no secret is configured.
 */
@Module({})
export class LeadercronModule extends ConfigurableModuleClass {
  static override forRoot(options: LeadercronModuleOptions = {}): DynamicModule {
    return withProviders(super.forRoot(options));
  }

  static override forRootAsync(options: LeadercronModuleAsyncOptions): DynamicModule {
    return withProviders(super.forRootAsync(options));
  }
}

function withProviders(base: DynamicModule): DynamicModule {
  return {
    ...base,
    global: true,
    imports: [...(base.imports ?? []), DiscoveryModule],
    providers: [...(base.providers ?? []), keysProvider, LeadercronJobs, LeadercronExplorer, LeadercronListener],
    exports: [...(base.exports ?? []), LeadercronJobs, LeadercronListener],
  };
}
