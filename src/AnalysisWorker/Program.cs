using InterpMesh.AnalysisWorker.Hosting;

// Settings: appsettings.json, environment (Worker__PluginsPath=…, Worker__Jobs__ConnectionString=…), or command line. See WorkerOptions.
AnalysisWorkerApp.Build(args).Run();
