export * from 'grenache-native/link'
