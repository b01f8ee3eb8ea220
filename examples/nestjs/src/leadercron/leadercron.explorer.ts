import { Injectable, type OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import type { LeadercronRun } from './contract.js';
import { LEADERCRON_JOB, type LeadercronJobMetadata } from './job.decorator.js';
import { LeadercronJobs } from './leadercron.jobs.js';

/**
 * Finds the methods marked with @LeadercronJob on every provider and
 * controller of the application, and registers them. Request-scoped and
 * transient providers have no single instance and are skipped.
 */
@Injectable()
export class LeadercronExplorer implements OnModuleInit {
  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
    private readonly jobs: LeadercronJobs,
  ) {}

  onModuleInit(): void {
    const wrappers = [...this.discovery.getProviders(), ...this.discovery.getControllers()];
    for (const wrapper of wrappers) {
      const instance: unknown = wrapper.instance;
      if (!instance || typeof instance !== 'object' || !wrapper.isDependencyTreeStatic()) {
        continue;
      }
      const proto = Object.getPrototypeOf(instance) as object | null;
      for (const method of this.scanner.getAllMethodNames(proto)) {
        const fn = (instance as Record<string, unknown>)[method];
        if (typeof fn !== 'function') {
          continue;
        }
        const meta = this.reflector.get<LeadercronJobMetadata | undefined>(LEADERCRON_JOB, fn);
        if (!meta) {
          continue;
        }
        const { name, ...opts } = meta;
        this.jobs.register(name, (run: LeadercronRun) => (fn as (r: LeadercronRun) => unknown).call(instance, run), opts);
      }
    }
  }
}
